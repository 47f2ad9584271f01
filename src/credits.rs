//! Credits spent on the Check path from leases (docs/behaviour.md,
//! "Credits").
//!
//! A replica takes a block of a key's credits from the database in one
//! conditional UPDATE (`Store::lease_credits`) and spends it in memory, so
//! that only one Check in `lease_size` waits on the database and no credit is
//! ever spent twice, whatever the number of replicas. What a replica holds
//! unspent goes back on a graceful stop ([`CreditLedger::return_all`]) and
//! when the key changes ([`CreditLedger::release`], driven by invalidation);
//! a crash loses at most the one lease per key the replica held.
//!
//! Invariants: an account's state sits behind a mutex that is never held
//! across an await; one lease per account is in flight at a time (a shared
//! future), and a Check that finds its account closed starts again on a
//! fresh one.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use metrics::Counter;
use moka::sync::Cache;
use uuid::Uuid;

use crate::{
    clock::Clock,
    store::{Lease, Store, StoreError},
};

/// How long a replica that found a key's credits spent waits before asking
/// the database again (a refill or a top-up may have come).
const EXHAUSTED_RECHECK: Duration = Duration::from_secs(1);

/// Why a credit could not be spent or refused: the database did not grant
/// or deny a lease in time. The Check becomes an error, never an allowance.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot lease credits: {0}")]
pub struct CreditError(Arc<StoreError>);

impl CreditError {
    pub fn is_unavailable(&self) -> bool {
        self.0.is_unavailable()
    }
}

/// Whether a Check may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    Allowed,
    Exhausted,
}

type Flight = Shared<BoxFuture<'static, Result<(), CreditError>>>;

#[derive(Default)]
struct AccountState {
    lease: Option<Lease>,
    /// Credits of `lease` not spent yet.
    unspent: u64,
    /// Unix milliseconds before which the database is not asked again.
    exhausted_until_ms: i64,
    /// Released: its credits went back; a Check starts on a new account.
    closed: bool,
    /// The store says the key has no credits (they were just removed): it
    /// is not counted until the change reaches the cache.
    uncounted: bool,
}

#[derive(Default)]
struct Account {
    state: Mutex<AccountState>,
    flight: Mutex<Option<Flight>>,
}

pub struct CreditLedger {
    store: Store,
    /// Lease periods and refills are judged on it (tests move it).
    clock: Clock,
    lease_size: u64,
    timeout: Duration,
    accounts: Cache<Uuid, Arc<Account>>,
    leases: Counter,
    returned: Counter,
}

impl CreditLedger {
    /// `lease_size` credits per lease; `timeout` bounds each lease on the
    /// Check path.
    pub fn new(store: Store, lease_size: u64, timeout: Duration, clock: Clock) -> Self {
        Self {
            store,
            clock,
            lease_size: lease_size.max(1),
            timeout,
            // Unbounded would be a leak; an evicted account's credits are
            // lost, as in a crash, so the bound is far above the keys a
            // replica sees.
            accounts: Cache::new(1_000_000),
            leases: metrics::counter!("keygate_credit_leases_total"),
            returned: metrics::counter!("keygate_credits_returned_total"),
        }
    }

    /// Spends one of key `id`'s credits, leasing a block first if this
    /// replica holds none.
    pub async fn spend(&self, id: Uuid) -> Result<Spend, CreditError> {
        // A lease granted between two attempts may have been spent by
        // others; a few rounds settle it, the last answer stands.
        for _ in 0..4 {
            let account = self.accounts.get_with(id, Arc::default);
            let now_ms = self.clock.now().timestamp_millis();
            {
                let mut state = account.state.lock().expect("credit account poisoned");
                if state.closed {
                    // Released under us: the cache now holds a fresh one.
                    continue;
                }
                if state.uncounted {
                    return Ok(Spend::Allowed);
                }
                let current = state
                    .lease
                    .is_some_and(|lease| now_ms < lease.period_end.saturating_mul(1000));
                if current && state.unspent > 0 {
                    state.unspent -= 1;
                    return Ok(Spend::Allowed);
                }
                if now_ms < state.exhausted_until_ms {
                    return Ok(Spend::Exhausted);
                }
            }
            self.flight(id, &account).await?;
        }
        Ok(Spend::Exhausted)
    }

    /// The lease in flight for `account`, started if there is none.
    fn flight(&self, id: Uuid, account: &Arc<Account>) -> Flight {
        let mut slot = account.flight.lock().expect("credit flight poisoned");
        if let Some(flight) = slot.as_ref() {
            return flight.clone();
        }
        let (store, account_ref) = (self.store.clone(), account.clone());
        let (want, timeout, leases) = (self.lease_size, self.timeout, self.leases.clone());
        let clock = self.clock.clone();
        let flight = async move {
            let now_ms = clock.now().timestamp_millis();
            let leased = tokio::time::timeout(timeout, store.lease_credits(id, want, now_ms / 1000))
                .await
                .unwrap_or(Err(StoreError::Timeout(timeout)));
            let mut orphaned = None;
            let outcome = match leased {
                Ok(lease) => {
                    leases.increment(1);
                    let mut state = account_ref.state.lock().expect("credit account poisoned");
                    match lease {
                        // Released while the lease was in flight: it goes
                        // straight back.
                        Some(lease) if state.closed => orphaned = Some(lease),
                        Some(lease) if lease.granted > 0 => {
                            // A block of the same generation and period adds
                            // to what is left; anything else is void.
                            let same = state.lease.is_some_and(|held| {
                                held.generation == lease.generation
                                    && held.period_start == lease.period_start
                            });
                            state.unspent = if same { state.unspent } else { 0 } + lease.granted;
                            state.lease = Some(lease);
                            state.exhausted_until_ms = 0;
                        }
                        Some(lease) => {
                            let next_refill = lease.period_end.saturating_mul(1000);
                            state.exhausted_until_ms =
                                (now_ms + EXHAUSTED_RECHECK.as_millis() as i64).min(next_refill);
                            state.lease = Some(lease);
                            state.unspent = 0;
                        }
                        // The key no longer has credits: the cache will
                        // know soon (and release this account); meanwhile
                        // it is not counted.
                        None => {
                            state.lease = None;
                            state.uncounted = true;
                        }
                    }
                    Ok(())
                }
                Err(error) => Err(CreditError(Arc::new(error))),
            };
            account_ref.flight.lock().expect("credit flight poisoned").take();
            if let Some(lease) = orphaned.filter(|lease| lease.granted > 0) {
                let now = clock.now().timestamp();
                if let Err(error) = store.return_credits(id, &lease, lease.granted, now).await {
                    tracing::warn!(key_id = %id, %error, "could not return a lease granted after its key changed; it is lost");
                }
            }
            outcome
        }
        .boxed()
        .shared();
        *slot = Some(flight.clone());
        flight
    }

    /// Forgets key `id`'s account and returns its unspent credits, unless the
    /// credits were set anew since (then they are void). Called when the key
    /// changed, here or on another replica.
    pub async fn release(&self, id: Uuid) {
        if let Some(account) = self.accounts.remove(&id) {
            self.give_back(id, &account).await;
        }
    }

    /// Returns every unspent credit this replica holds: the graceful stop.
    pub async fn return_all(&self) {
        let accounts: Vec<_> = self.accounts.iter().collect();
        self.accounts.invalidate_all();
        for (id, account) in accounts {
            self.give_back(*id, &account).await;
        }
    }

    async fn give_back(&self, id: Uuid, account: &Account) {
        let (lease, unspent) = {
            let mut state = account.state.lock().expect("credit account poisoned");
            state.closed = true;
            (state.lease, std::mem::take(&mut state.unspent))
        };
        let Some(lease) = lease.filter(|_| unspent > 0) else {
            return;
        };
        match self
            .store
            .return_credits(id, &lease, unspent, self.clock.now().timestamp())
            .await
        {
            Ok(true) => self.returned.increment(unspent),
            Ok(false) => {
                tracing::debug!(key_id = %id, unspent, "unspent credits were void: set anew or refilled")
            }
            Err(error) => {
                tracing::warn!(key_id = %id, unspent, %error, "could not return unspent credits; they are lost")
            }
        }
    }
}
