//! What the dispatcher prepares from an endpoint's row, kept between
//! rounds: the signing key opened from its sealed secret, and its URL
//! as `TargetPolicy::check_uri` answers it, prepared for requests
//! (`client::Target`).
//!
//! Without it every delivery unsealed the secret (AES-256-GCM), set up
//! HMAC's key (two SHA-256 compressions) and parsed the URL (about 6,000
//! instructions for `http://127.0.0.1:…/hook`) again, for a row that does
//! not change (BENCHMARKS.md, session 12). Each round reads its endpoints'
//! rows once (`Store::endpoint_targets`) and asks here once per endpoint.
//! An entry is found by endpoint id, holds the bytes it was prepared from,
//! and serves only a row read with the same bytes: a resealed or rotated
//! secret (no call does so today) or an updated URL is prepared afresh, so
//! nothing is signed with a secret, or sent to a URL, that the database no
//! longer holds. What cannot be prepared (a refused URL, a secret that
//! does not open) is not kept: its deliveries fail and are retried,
//! prepared again. The URL's address rule at connect time
//! (`GuardedResolver`) is untouched.
//!
//! The keys stay in this process's memory, like the seal key itself, and
//! are never printed (`SigningKey`'s `Debug` is redacted; entries have
//! none). An entry unused between two sweeps (the dispatcher's
//! housekeeping, every 5 s) is dropped, so a deleted or idle endpoint's
//! entries leave memory within about 10 s; but housekeeping waits while
//! the dispatcher works through a backlog (rounds of full batches), and
//! until then every endpoint it delivered to keeps its entries: at most one
//! per endpoint in the database.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use uuid::Uuid;

pub struct EndpointCache<V> {
    entries: Mutex<HashMap<Uuid, Entry<V>>>,
}

struct Entry<V> {
    /// The column's bytes the value was prepared from.
    source: Box<[u8]>,
    value: V,
    used: bool,
}

impl<V> Default for EndpointCache<V> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

impl<V: Clone> EndpointCache<V> {
    /// `endpoint`'s value prepared from `source`: the one kept if it came
    /// from the same bytes, else `prepare`'s, kept unless it failed.
    pub fn get<E>(
        &self,
        endpoint: Uuid,
        source: &[u8],
        prepare: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&endpoint) {
            if *entry.source == *source {
                entry.used = true;
                return Ok(entry.value.clone());
            }
        }
        let value = prepare()?;
        entries.insert(
            endpoint,
            Entry {
                source: source.into(),
                value: value.clone(),
                used: true,
            },
        );
        Ok(value)
    }

    /// Drops the entries unused since the last sweep.
    pub fn sweep(&self) {
        self.entries()
            .retain(|_, entry| std::mem::take(&mut entry.used));
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Entry<V>>> {
        self.entries
            .lock()
            .expect("webhook endpoint cache poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::{
        secret::{SealKey, SecretError},
        signature::SigningKey,
        target::{TargetError, TargetPolicy},
        SigningSecret,
    };

    fn sealed_secret(seal_key: &SealKey, endpoint: Uuid) -> (SigningSecret, Vec<u8>) {
        let secret = SigningSecret::generate().unwrap();
        let sealed = seal_key.seal(endpoint, &secret).unwrap();
        (secret, sealed)
    }

    /// As the dispatcher opens a signing key.
    fn key(
        cache: &EndpointCache<SigningKey>,
        seal_key: &SealKey,
        endpoint: Uuid,
        sealed: &[u8],
    ) -> Result<SigningKey, SecretError> {
        cache.get(endpoint, sealed, || {
            seal_key
                .open(endpoint, sealed)
                .map(|secret| SigningKey::new(&secret))
        })
    }

    /// As the dispatcher checks a URL.
    fn checked(
        cache: &EndpointCache<http::Uri>,
        endpoint: Uuid,
        raw: &str,
    ) -> Result<http::Uri, TargetError> {
        cache.get(endpoint, raw.as_bytes(), || {
            TargetPolicy::default().check_uri(raw)
        })
    }

    fn signs_as(key: SigningKey, secret: &SigningSecret) -> bool {
        key.sign("msg", "1", "{}") == SigningKey::new(secret).sign("msg", "1", "{}")
    }

    #[test]
    fn a_changed_sealed_secret_is_opened_again() {
        let seal_key = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        let cache = EndpointCache::default();
        let endpoint = Uuid::now_v7();
        let signs = |sealed: &[u8], secret| {
            signs_as(key(&cache, &seal_key, endpoint, sealed).unwrap(), secret)
        };
        let (first, sealed) = sealed_secret(&seal_key, endpoint);
        assert!(signs(&sealed, &first));
        assert!(signs(&sealed, &first), "and again, from the cache");
        let (second, resealed) = sealed_secret(&seal_key, endpoint);
        assert!(
            signs(&resealed, &second),
            "a different sealed secret is opened"
        );
        // Another endpoint's sealed secret does not open for this one.
        let (_, foreign) = sealed_secret(&seal_key, Uuid::now_v7());
        assert!(key(&cache, &seal_key, endpoint, &foreign).is_err());
    }

    #[test]
    fn an_updated_url_is_checked_again_and_a_refused_one_is_not_kept() {
        let cache = EndpointCache::default();
        let endpoint = Uuid::now_v7();
        let first = checked(&cache, endpoint, "https://hooks.example.com/a").unwrap();
        assert_eq!(first, "https://hooks.example.com/a");
        let again = checked(&cache, endpoint, "https://hooks.example.com/a").unwrap();
        assert_eq!(again, first);
        let updated = checked(&cache, endpoint, "https://hooks.example.com/b").unwrap();
        assert_eq!(updated, "https://hooks.example.com/b");
        // Plain http is refused under the default policy, every time.
        for _ in 0..2 {
            assert_eq!(
                checked(&cache, endpoint, "http://hooks.example.com/b"),
                Err(TargetError::NotHttps)
            );
        }
        assert_eq!(
            checked(&cache, endpoint, "https://10.0.0.1/hook"),
            Err(TargetError::PrivateAddress("10.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn an_entry_unused_between_two_sweeps_is_dropped() {
        let seal_key = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        let cache = EndpointCache::default();
        let (busy, idle) = (Uuid::now_v7(), Uuid::now_v7());
        let (_, busy_sealed) = sealed_secret(&seal_key, busy);
        let (_, idle_sealed) = sealed_secret(&seal_key, idle);
        key(&cache, &seal_key, busy, &busy_sealed).unwrap();
        key(&cache, &seal_key, idle, &idle_sealed).unwrap();
        cache.sweep();
        assert_eq!(
            cache.entries().len(),
            2,
            "both were used before the first sweep"
        );
        key(&cache, &seal_key, busy, &busy_sealed).unwrap();
        cache.sweep();
        assert_eq!(cache.entries().len(), 1, "the idle endpoint's key is gone");
        cache.sweep();
        assert!(cache.entries().is_empty());
    }
}
