//! The Check path's key cache: moka, keyed by key hash.
//!
//! - Concurrent misses on one hash share a single store read (moka's entry
//!   API coalesces initialisers).
//! - Unknown hashes go to a separate, smaller negative cache with a short TTL.
//! - Time conditions are not resolved here: entries hold instants and the
//!   decision compares them with the current time on every Check.
//! - A revoke can race a fill: the fill may read the row just before the
//!   revoke commits and put it in the cache just after the revoke evicted
//!   it, and callers that joined that fill receive the stale row too.
//!   Every invalidation leaves a tombstone (for the key id, the owner, or
//!   the whole cache) holding the generation it was made under, then bumps
//!   `generation`. A fill records the generation it started under; an entry
//!   at or below a matching tombstone is stale. Hits pay for the tombstone
//!   lookup only when the generation moved since the entry was last vetted.
//! - Stale-if-error: an entry past its TTL is refreshed from the store by
//!   one caller at a time; while the store cannot be reached it keeps being
//!   answered for up to `stale_if_error` more (counted in
//!   `keygate_cache_stale_served_total`). Invalidations still apply to it,
//!   so this loosens nothing a notification already told us.
//! - Misses that may read the store at once are bounded; beyond the bound a
//!   miss is shed (UNAVAILABLE) rather than queued behind a slow store.
//! - A hash that no issued key has ([`IssuedKeys`]) is unknown without a
//!   store read, except for a few a second: those cover a key created on
//!   another replica whose notification is still on its way.
//! - What the cache reads from is a [`KeySource`]: the [`Store`] in the
//!   service; in the tests below, a source whose reads the test answers one
//!   at a time, so a fill and an invalidation are interleaved step by step
//!   instead of raced.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota};
use metrics::Counter;
use moka::{future::Cache, ops::compute::Op};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    domain::{CheckKey, KeyHash},
    issued_keys::{self, HashPrefix, IssuedKeys},
    store::{Store, StoreError},
};

/// What the cache reads keys from.
pub trait KeySource: Send + Sync + 'static {
    /// The key with this hash as Check needs it, `None` if there is none.
    fn find_for_check(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Option<CheckKey>, StoreError>> + Send;

    /// How long one read takes at most: tombstones outlive it.
    fn check_timeout(&self) -> Duration;
}

impl KeySource for Store {
    fn find_for_check(
        &self,
        hash: &KeyHash,
    ) -> impl Future<Output = Result<Option<CheckKey>, StoreError>> + Send {
        Store::find_for_check(self, hash)
    }

    fn check_timeout(&self) -> Duration {
        Store::check_timeout(self)
    }
}

/// A cached key and the invalidation generation its fill started under.
#[derive(Debug)]
pub struct CachedKey {
    pub key: CheckKey,
    /// The transport's encoding of this key's identity, made on its first
    /// allowance and reused by every later one while the entry lives. It
    /// must derive from `key` alone: a changed key is a new entry.
    pub encoded: OnceLock<EncodedIdentity>,
    /// The same for forward-auth's HTTP answers. Besides `key`, it derives
    /// from the forward-auth renderer's settings (which credential to strip,
    /// which metadata names): one renderer per cache, built at start.
    pub http_identity: OnceLock<HttpIdentity>,
    filled_at_generation: u64,
    /// The newest generation at which no tombstone applied to this entry.
    vetted_at_generation: AtomicU64,
    filled_at: Instant,
    /// Once expired: nanoseconds after the cache's epoch before which no
    /// caller tries to refresh it again (others answer from it meanwhile).
    refresh_after: AtomicU64,
}

/// Identity parts of an allowed Check response, already in wire form
/// (built by `grpc::ext_authz::render`): one buffer, so that answering
/// touches as few cache lines as possible.
#[derive(Debug, Clone)]
pub struct EncodedIdentity {
    bytes: Box<[u8]>,
    upstream_headers_len: usize,
}

impl EncodedIdentity {
    pub fn new(upstream_headers: &[u8], metadata: &[u8]) -> Self {
        Self {
            bytes: [upstream_headers, metadata].concat().into_boxed_slice(),
            upstream_headers_len: upstream_headers.len(),
        }
    }

    pub fn upstream_headers(&self) -> &[u8] {
        &self.bytes[..self.upstream_headers_len]
    }

    pub fn metadata(&self) -> &[u8] {
        &self.bytes[self.upstream_headers_len..]
    }
}

/// Identity parts of an allowed forward-auth answer (built by
/// `forward_auth::render`): names and values whose bytes each answer shares
/// instead of copying.
#[derive(Debug, Clone)]
pub struct HttpIdentity {
    pub headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// The headers to remove upstream when the answer carries no shadow
    /// decision, one value per credential source (see the renderer).
    pub removed: [http::HeaderValue; 3],
}

impl CachedKey {
    /// An entry that belongs to no cache, for tests of what is built from it.
    #[cfg(test)]
    pub(crate) fn detached(key: CheckKey) -> Self {
        Self::new(key, 0)
    }

    fn new(key: CheckKey, generation: u64) -> Self {
        Self {
            key,
            encoded: OnceLock::new(),
            http_identity: OnceLock::new(),
            filled_at_generation: generation,
            vetted_at_generation: AtomicU64::new(generation),
            filled_at: Instant::now(),
            refresh_after: AtomicU64::new(0),
        }
    }
}

/// How many times a lookup refills after finding its fill outdated by a
/// concurrent invalidation before it gives up.
const MAX_REFILLS: usize = 4;
/// Tombstones outlive the entries they condemn: an entry lives `ttl` after
/// its fill ends, and a fill ends within the store's Check timeout; the
/// margin covers scheduling delays.
const TOMBSTONE_MARGIN: Duration = Duration::from_secs(60);
/// After a failed refresh of an expired entry, how long callers answer from
/// it before one of them tries the store again.
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// Store reads a second for hashes the issued-key set does not hold: enough
/// for keys created on another replica moments ago, too few to matter to
/// the store when unknown keys flood in.
const UNISSUED_READS_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::new(10).unwrap();

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: u64,
    pub ttl: Duration,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
    /// How long past `ttl` an entry is answered while the store is down.
    pub stale_if_error: Duration,
    /// Store reads for misses in flight at most.
    pub max_concurrent_misses: usize,
}

/// Why a fill produced no entry.
#[derive(Debug, thiserror::Error)]
enum FillError {
    #[error("no such key")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key kept changing while it was being read")]
    Contended,
    #[error("too many cache misses are reading the store")]
    Shed,
    /// Not a fill: the store failed a credit lease the Check needed.
    #[error(transparent)]
    Credits(#[from] crate::credits::CreditError),
}

/// What a lookup of a hash the issued-key set does not hold may do.
enum UnissuedRead<'a> {
    /// Answer "no such key" without the store: the budget is spent.
    Refused,
    /// Join the read another lookup of the same hash has under way.
    Joins,
    /// Read the store; later lookups of the hash join it until this ends.
    Reads(ReadingUnissued<'a>),
}

/// A read of a hash the issued-key set does not hold, under way until
/// dropped.
struct ReadingUnissued<'a> {
    reading: &'a Mutex<HashSet<HashPrefix, foldhash::fast::RandomState>>,
    prefix: HashPrefix,
}

impl Drop for ReadingUnissued<'_> {
    fn drop(&mut self) {
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.prefix);
    }
}

/// The store was needed for a lookup and failed; the cause is kept for the log.
#[derive(Debug, thiserror::Error)]
#[error("the key store could not be read")]
pub struct LookupError(#[source] Arc<FillError>);

impl From<crate::credits::CreditError> for LookupError {
    fn from(error: crate::credits::CreditError) -> Self {
        Self(Arc::new(FillError::Credits(error)))
    }
}

impl LookupError {
    /// Whether the store was unreachable (as opposed to failing otherwise).
    pub fn is_unavailable(&self) -> bool {
        match self.0.as_ref() {
            FillError::Store(store) => store.is_unavailable(),
            FillError::Credits(credits) => credits.is_unavailable(),
            _ => false,
        }
    }

    /// Whether invalidations kept outdating the key's fills (not a store
    /// failure).
    pub fn is_contended(&self) -> bool {
        matches!(self.0.as_ref(), FillError::Contended)
    }

    /// Whether the miss was shed because too many were reading the store.
    pub fn is_shed(&self) -> bool {
        matches!(self.0.as_ref(), FillError::Shed)
    }
}

pub struct KeyCache<S = Store> {
    store: S,
    /// Hashed with a seeded foldhash: every Check hashes its key here, and
    /// SipHash was a sixth of a hit's lookup (callgrind).
    known: Cache<KeyHash, Arc<CachedKey>, foldhash::fast::RandomState>,
    unknown: moka::sync::Cache<KeyHash, ()>,
    /// Key id → hash, so a change to a key (named by id in admin calls and
    /// notifications) can evict it without the hash leaving the process.
    hash_by_id: moka::sync::Cache<Uuid, KeyHash>,
    generation: AtomicU64,
    key_tombstones: moka::sync::Cache<Uuid, u64>,
    owner_tombstones: moka::sync::Cache<String, u64>,
    /// Generation of the last full clear: everything filled at or before it
    /// is stale.
    cleared_at_generation: AtomicU64,
    store_reads: AtomicU64,
    ttl: Duration,
    /// The origin of `CachedKey::refresh_after`.
    epoch: Instant,
    miss_permits: Semaphore,
    issued: IssuedKeys,
    unissued_reads: DefaultDirectRateLimiter,
    /// Hashes the issued-key set does not hold whose store read is under
    /// way ([`UnissuedRead`]).
    unissued_reading: Mutex<HashSet<HashPrefix, foldhash::fast::RandomState>>,
    hits: Counter,
    misses: Counter,
    negative_hits: Counter,
    stale_served: Counter,
    shed: Counter,
    unissued: Counter,
}

impl<S: KeySource> KeyCache<S> {
    pub fn new(store: S, settings: CacheSettings) -> Self {
        // Entries live through the stale window; freshness is judged per hit.
        let lifetime = settings.ttl + settings.stale_if_error;
        let tombstone_ttl = lifetime + store.check_timeout() + TOMBSTONE_MARGIN;
        Self {
            store,
            known: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(lifetime)
                .support_invalidation_closures()
                .build_with_hasher(foldhash::fast::RandomState::default()),
            unknown: moka::sync::Cache::builder()
                .max_capacity(settings.negative_capacity)
                .time_to_live(settings.negative_ttl)
                .build(),
            hash_by_id: moka::sync::Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(lifetime)
                .build(),
            generation: AtomicU64::new(1),
            key_tombstones: tombstones(tombstone_ttl),
            owner_tombstones: tombstones(tombstone_ttl),
            cleared_at_generation: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
            ttl: settings.ttl,
            epoch: Instant::now(),
            miss_permits: Semaphore::new(settings.max_concurrent_misses),
            issued: IssuedKeys::new(),
            unissued_reads: governor::RateLimiter::direct(Quota::per_second(
                UNISSUED_READS_PER_SECOND,
            )),
            unissued_reading: Mutex::default(),
            hits: metrics::counter!("keygate_cache_hits_total"),
            misses: metrics::counter!("keygate_cache_misses_total"),
            negative_hits: metrics::counter!("keygate_cache_negative_hits_total"),
            stale_served: metrics::counter!("keygate_cache_stale_served_total"),
            shed: metrics::counter!("keygate_check_misses_shed_total"),
            unissued: metrics::counter!("keygate_cache_unissued_total"),
        }
    }

    /// The key with this hash, `None` if no such key exists.
    pub async fn lookup(&self, hash: &KeyHash) -> Result<Option<Arc<CachedKey>>, LookupError> {
        if let Some(hit) = self.known.get(hash).await {
            match self.condemned_at(&hit) {
                None if hit.filled_at.elapsed() < self.ttl => {
                    self.hits.increment(1);
                    return Ok(Some(hit));
                }
                None => match self.refresh(hash, hit).await {
                    Refreshed::Answer(answer) => return answer,
                    Refreshed::Condemned => {}
                },
                Some(at) => self.evict_stale(hash, &hit, at).await,
            }
        }
        if self.unknown.contains_key(hash) {
            self.negative_hits.increment(1);
            return Ok(None);
        }
        // Held until this lookup ends, when it reads for a hash the
        // issued-key set does not hold.
        let _reading = if self.issued.may_exist(hash) {
            None
        } else {
            match self.unissued_read(hash) {
                UnissuedRead::Refused => {
                    self.unissued.increment(1);
                    return Ok(None);
                }
                UnissuedRead::Joins => None,
                UnissuedRead::Reads(reading) => Some(reading),
            }
        };
        self.misses.increment(1);
        for _ in 0..MAX_REFILLS {
            let entry = self
                .known
                .entry_by_ref(hash)
                .or_try_insert_with(self.fill(*hash))
                .await;
            let cached = match entry {
                Ok(entry) => entry.into_value(),
                Err(error) => {
                    return match error.as_ref() {
                        FillError::Unknown => Ok(None),
                        FillError::Store(_)
                        | FillError::Contended
                        | FillError::Shed
                        | FillError::Credits(_) => Err(LookupError(error)),
                    }
                }
            };
            // Callers that joined a fill started before an invalidation get
            // its stale row: look again rather than answer from it.
            match self.condemned_at(&cached) {
                None => {
                    self.hash_by_id.insert(cached.key.id, *hash);
                    return Ok(Some(cached));
                }
                Some(at) => self.evict_stale(hash, &cached, at).await,
            }
        }
        Err(LookupError(Arc::new(FillError::Contended)))
    }

    /// Whether a lookup of `hash`, which the issued-key set does not hold,
    /// may read the store: a read of that hash already under way is joined
    /// (the cache makes it one read), else a new one spends one of
    /// [`UNISSUED_READS_PER_SECOND`]. A key created on another replica a
    /// moment ago, its notification not yet here, is such a hash: spending
    /// the budget once per Check, a burst of its first Checks ran it dry
    /// while the first read was still out, and the rest were told the key
    /// did not exist.
    fn unissued_read(&self, hash: &KeyHash) -> UnissuedRead<'_> {
        let prefix = issued_keys::prefix(hash);
        let mut reading = self
            .unissued_reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reading.contains(&prefix) {
            return UnissuedRead::Joins;
        }
        if self.unissued_reads.check().is_err() {
            return UnissuedRead::Refused;
        }
        reading.insert(prefix);
        UnissuedRead::Reads(ReadingUnissued {
            reading: &self.unissued_reading,
            prefix,
        })
    }

    /// An expired entry: one caller at a time reads the store again; the
    /// others, and every caller while the store cannot be reached, answer
    /// from the expired entry (it is dropped by the cache once its stale
    /// window is over).
    async fn refresh(&self, hash: &KeyHash, expired: Arc<CachedKey>) -> Refreshed {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let after = expired.refresh_after.load(Ordering::Acquire);
        let retry_at = now + REFRESH_RETRY.as_nanos() as u64;
        let claimed = now >= after
            && expired
                .refresh_after
                .compare_exchange(after, retry_at, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if !claimed {
            self.stale_served.increment(1);
            return Refreshed::Answer(Ok(Some(expired)));
        }
        self.misses.increment(1);
        match self.fill(*hash).await {
            Ok(fresh) => {
                self.known.insert(*hash, fresh.clone()).await;
                if self.condemned_at(&fresh).is_some() {
                    return Refreshed::Condemned;
                }
                self.hash_by_id.insert(fresh.key.id, *hash);
                Refreshed::Answer(Ok(Some(fresh)))
            }
            Err(FillError::Unknown) => {
                self.known.invalidate(hash).await;
                Refreshed::Answer(Ok(None))
            }
            Err(FillError::Store(error)) if !error.is_unavailable() => {
                Refreshed::Answer(Err(LookupError(Arc::new(error.into()))))
            }
            Err(error) => {
                tracing::debug!(%error, "answering from an expired cache entry (stale-if-error)");
                self.stale_served.increment(1);
                Refreshed::Answer(Ok(Some(expired)))
            }
        }
    }

    /// Removes `stale` (and only it: a concurrent caller may already have
    /// replaced it with a fresh fill), then waits until the invalidation that
    /// condemned it has moved the generation on. Between writing its
    /// tombstone and bumping the generation an invalidation condemns every
    /// fill starting at the current generation, so refilling earlier would
    /// only be condemned again.
    async fn evict_stale(&self, hash: &KeyHash, stale: &Arc<CachedKey>, condemned_at: u64) {
        self.known
            .entry_by_ref(hash)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(entry) if Arc::ptr_eq(entry.value(), stale) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        while self.generation.load(Ordering::SeqCst) <= condemned_at {
            tokio::task::yield_now().await;
        }
    }

    /// The generation of an invalidation made since this entry's fill began
    /// that applies to it, if any. Costs two atomic loads unless some
    /// invalidation happened since the entry was last vetted.
    fn condemned_at(&self, cached: &CachedKey) -> Option<u64> {
        let generation = self.generation.load(Ordering::SeqCst);
        if cached.vetted_at_generation.load(Ordering::Acquire) == generation {
            return None;
        }
        let filled = cached.filled_at_generation;
        let applies = |at: u64| (filled <= at).then_some(at);
        let condemned = applies(self.cleared_at_generation.load(Ordering::SeqCst))
            .or_else(|| self.key_tombstones.get(&cached.key.id).and_then(applies))
            .or_else(|| {
                self.owner_tombstones
                    .get(cached.key.owner_id.as_str())
                    .and_then(applies)
            });
        if condemned.is_none() {
            // Tombstones are written before the generation moves, so every
            // invalidation up to `generation` has been looked at.
            cached
                .vetted_at_generation
                .fetch_max(generation, Ordering::AcqRel);
        }
        condemned
    }

    async fn fill(&self, hash: KeyHash) -> Result<Arc<CachedKey>, FillError> {
        // A caller may have missed the negative entry just before an earlier
        // fill recorded it; fills for one hash are serialised, so look again.
        if self.unknown.contains_key(&hash) {
            return Err(FillError::Unknown);
        }
        let Ok(_permit) = self.miss_permits.try_acquire() else {
            self.shed.increment(1);
            return Err(FillError::Shed);
        };
        let generation = self.generation.load(Ordering::SeqCst);
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        match self.store.find_for_check(&hash).await? {
            Some(key) => Ok(Arc::new(CachedKey::new(key, generation))),
            None => {
                // Inserted before the shared error is returned, so a caller
                // arriving after this fill finds the negative entry.
                self.unknown.insert(hash, ());
                Err(FillError::Unknown)
            }
        }
    }

    /// Evicts one key (by id) after a change that may alter its decisions.
    pub async fn invalidate_key(&self, id: Uuid) {
        let at = self.generation.load(Ordering::SeqCst);
        self.key_tombstones
            .entry(id)
            .and_upsert_with(|old| old.map_or(at, |old| at.max(*old.value())));
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(hash) = self.hash_by_id.remove(&id) {
            self.known.invalidate(&hash).await;
        }
    }

    /// Evicts every key of an owner, e.g. after a suspension.
    pub fn invalidate_owner(&self, owner_id: &str) {
        let at = self.generation.load(Ordering::SeqCst);
        self.owner_tombstones
            .entry_by_ref(owner_id)
            .and_upsert_with(|old| old.map_or(at, |old| at.max(*old.value())));
        self.generation.fetch_add(1, Ordering::SeqCst);
        let owner_id = owner_id.to_owned();
        if let Err(error) = self
            .known
            .invalidate_entries_if(move |_, cached| cached.key.owner_id == owner_id)
        {
            // The tombstone already keeps the owner's entries from being
            // served; this only frees their memory sooner.
            tracing::warn!(%error, "owner eviction could not be registered; entries expire on their own");
        }
    }

    /// Drops everything, e.g. when notifications may have been missed.
    pub fn clear(&self) {
        let at = self.generation.load(Ordering::SeqCst);
        self.cleared_at_generation.fetch_max(at, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.known.invalidate_all();
        self.unknown.invalidate_all();
        self.hash_by_id.invalidate_all();
    }

    /// Forgets that `hash` was unknown, e.g. once a key with it is imported.
    pub fn forget_unknown(&self, hash: &KeyHash) {
        self.unknown.invalidate(hash);
    }

    /// The set of issued key hashes that answers unknown keys.
    pub fn issued(&self) -> &IssuedKeys {
        &self.issued
    }

    /// Store reads made by fills since start (for tests and diagnostics).
    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }

    /// Entries in the positive cache (approximate, as moka reports).
    pub fn entry_count(&self) -> u64 {
        self.known.entry_count()
    }

    /// Applies pending evictions now (tests and the metrics gauge).
    pub async fn run_pending_tasks(&self) {
        self.known.run_pending_tasks().await;
    }

    /// Inserts a key directly, bypassing the store: for benchmarks that need
    /// a million warm entries without a million rows.
    #[doc(hidden)]
    pub async fn insert_for_bench(&self, hash: KeyHash, key: CheckKey) {
        let generation = self.generation.load(Ordering::SeqCst);
        self.known
            .insert(hash, Arc::new(CachedKey::new(key, generation)))
            .await;
    }
}

/// What [`KeyCache::refresh`] made of an expired entry.
enum Refreshed {
    Answer(Result<Option<Arc<CachedKey>>, LookupError>),
    /// The fresh row was outdated by an invalidation while it was read.
    Condemned,
}

/// Bounded by time only: evicting a tombstone for room could let the stale
/// entry it condemns be served again. One is a few dozen bytes, written once
/// per invalidation.
fn tombstones<K>(ttl: Duration) -> moka::sync::Cache<K, u64>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::sync::Cache::builder().time_to_live(ttl).build()
}

#[cfg(test)]
mod tests {
    //! A fill and an invalidation, interleaved step by step: the source
    //! hands each read to the test, which decides when it returns and what
    //! row it read.

    use chrono::Utc;
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// One store read in flight, answered by the test.
    struct Read {
        answer: oneshot::Sender<Option<CheckKey>>,
    }

    struct ScriptedSource {
        reads: mpsc::UnboundedSender<Read>,
    }

    impl KeySource for ScriptedSource {
        fn find_for_check(
            &self,
            _hash: &KeyHash,
        ) -> impl Future<Output = Result<Option<CheckKey>, StoreError>> + Send {
            let (answer, answered) = oneshot::channel();
            self.reads
                .send(Read { answer })
                .expect("the test stopped taking reads");
            async move { Ok(answered.await.expect("the test dropped a read")) }
        }

        fn check_timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
    }

    fn scripted_cache() -> (Arc<KeyCache<ScriptedSource>>, mpsc::UnboundedReceiver<Read>) {
        let (reads, taken) = mpsc::unbounded_channel();
        let settings = CacheSettings {
            capacity: 100,
            ttl: Duration::from_secs(3600),
            negative_capacity: 100,
            negative_ttl: Duration::from_secs(3600),
            stale_if_error: Duration::ZERO,
            max_concurrent_misses: 8,
        };
        (
            Arc::new(KeyCache::new(ScriptedSource { reads }, settings)),
            taken,
        )
    }

    fn active() -> CheckKey {
        CheckKey::sample(Uuid::from_u128(7), "acme", &["read:orders"])
    }

    fn revoked() -> CheckKey {
        CheckKey {
            revoked_at: Some(Utc::now()),
            ..active()
        }
    }

    fn hash() -> KeyHash {
        KeyHash::of_token("sk_live_scripted")
    }

    /// The next store read, with a message naming the read that did not
    /// come. Time is paused in these tests: the bound costs no wall time.
    async fn next_read(reads: &mut mpsc::UnboundedReceiver<Read>, what: &str) -> Read {
        match tokio::time::timeout(Duration::from_secs(5), reads.recv()).await {
            Ok(Some(read)) => read,
            _ => panic!("{what}"),
        }
    }

    /// Starts a lookup on its own task and waits until it is reading.
    async fn lookup_reading(
        cache: &Arc<KeyCache<ScriptedSource>>,
        reads: &mut mpsc::UnboundedReceiver<Read>,
    ) -> (
        tokio::task::JoinHandle<Result<Option<Arc<CachedKey>>, LookupError>>,
        Read,
    ) {
        let looking = tokio::spawn({
            let cache = cache.clone();
            async move { cache.lookup(&hash()).await }
        });
        let read = next_read(reads, "the lookup did not read").await;
        (looking, read)
    }

    fn revoked_at(found: &Option<Arc<CachedKey>>) -> Option<DateTime> {
        found
            .as_ref()
            .expect("the key was not found")
            .key
            .revoked_at
    }

    type DateTime = chrono::DateTime<Utc>;

    /// A key created on another replica a moment ago, whose notification
    /// has not come: the issued-key set here does not hold it. A burst of
    /// its first Checks while the first read is out joins that read, and
    /// none of them is told the key does not exist.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_first_checks_of_a_key_not_yet_known_as_issued_joins_one_read() {
        let (cache, mut reads) = scripted_cache();
        cache.issued().fill(std::iter::empty());
        assert!(!cache.issued().may_exist(&hash()));
        let (first, read) = lookup_reading(&cache, &mut reads).await;
        let burst: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.lookup(&hash()).await })
            })
            .collect();
        // Every lookup of the burst reaches the cache before the read ends.
        tokio::time::sleep(Duration::from_millis(10)).await;
        read.answer.send(Some(active())).unwrap();
        assert!(first.await.unwrap().unwrap().is_some());
        for looking in burst {
            assert!(
                looking.await.unwrap().unwrap().is_some(),
                "a Check of the new key was told it does not exist"
            );
        }
        assert!(reads.try_recv().is_err(), "one read for the burst");
        assert_eq!(cache.store_reads(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_needs_no_read() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        read.answer.send(Some(active())).unwrap();
        assert!(revoked_at(&looking.await.unwrap().unwrap()).is_none());
        assert!(cache.lookup(&hash()).await.unwrap().is_some());
        assert!(reads.try_recv().is_err(), "a hit read the store");
        assert_eq!(cache.store_reads(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_during_a_fill_makes_the_lookup_read_again() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        // The read saw the row before the revoke committed; the revoke's
        // eviction comes before the fill is stored.
        cache.invalidate_key(active().id).await;
        read.answer.send(Some(active())).unwrap();
        next_read(&mut reads, "the stale fill was not read again")
            .await
            .answer
            .send(Some(revoked()))
            .unwrap();
        let found = looking.await.unwrap().unwrap();
        assert!(
            revoked_at(&found).is_some(),
            "the pre-revoke row was served"
        );
        // And what stays cached is the revoked row.
        assert!(revoked_at(&cache.lookup(&hash()).await.unwrap()).is_some());
        assert!(reads.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_suspension_during_a_fill_condemns_it() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        cache.invalidate_owner("acme");
        read.answer.send(Some(active())).unwrap();
        let suspended = CheckKey {
            owner_suspended: true,
            ..active()
        };
        next_read(&mut reads, "the suspended owner's fill was not read again")
            .await
            .answer
            .send(Some(suspended))
            .unwrap();
        let found = looking.await.unwrap().unwrap().unwrap();
        assert!(found.key.owner_suspended);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clear_during_a_fill_condemns_it() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        cache.clear();
        read.answer.send(Some(active())).unwrap();
        next_read(&mut reads, "the cleared fill was not read again")
            .await
            .answer
            .send(Some(revoked()))
            .unwrap();
        assert!(revoked_at(&looking.await.unwrap().unwrap()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidation_of_another_key_leaves_the_fill_alone() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        cache.invalidate_key(Uuid::from_u128(8)).await;
        cache.invalidate_owner("globex");
        read.answer.send(Some(active())).unwrap();
        assert!(revoked_at(&looking.await.unwrap().unwrap()).is_none());
        assert_eq!(
            cache.store_reads(),
            1,
            "an unrelated invalidation forced a read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_after_the_fill_evicts_the_entry() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        read.answer.send(Some(active())).unwrap();
        looking.await.unwrap().unwrap();
        cache.invalidate_key(active().id).await;
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        read.answer.send(Some(revoked())).unwrap();
        assert!(revoked_at(&looking.await.unwrap().unwrap()).is_some());
    }

    // Paused time: the wait for reads that do not come ends as soon as
    // every task is idle, without a sleep.
    #[tokio::test(start_paused = true)]
    async fn callers_that_joined_a_condemned_fill_read_again_too() {
        let (cache, mut reads) = scripted_cache();
        let (first, read) = lookup_reading(&cache, &mut reads).await;
        let second = tokio::spawn({
            let cache = cache.clone();
            async move { cache.lookup(&hash()).await }
        });
        // Let the second caller join the fill in flight.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        cache.invalidate_key(active().id).await;
        read.answer.send(Some(active())).unwrap();
        // Each caller may start its own refill; every one reads the revoked row.
        let mut answered = 0;
        while let Ok(Some(reread)) =
            tokio::time::timeout(Duration::from_millis(200), reads.recv()).await
        {
            reread.answer.send(Some(revoked())).unwrap();
            answered += 1;
        }
        assert!(
            (1..=2).contains(&answered),
            "{answered} reads after the revoke"
        );
        for looking in [first, second] {
            assert!(revoked_at(&looking.await.unwrap().unwrap()).is_some());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_hash_is_remembered() {
        let (cache, mut reads) = scripted_cache();
        let (looking, read) = lookup_reading(&cache, &mut reads).await;
        read.answer.send(None).unwrap();
        assert!(looking.await.unwrap().unwrap().is_none());
        assert!(cache.lookup(&hash()).await.unwrap().is_none());
        assert!(reads.try_recv().is_err(), "the negative entry was not used");
    }
}
