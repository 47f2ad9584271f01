//! Each endpoint's prepared signing key, kept between deliveries.
//!
//! Without it every delivery unsealed its endpoint's secret (AES-256-GCM)
//! and set up HMAC's key (two SHA-256 compressions) again, for a secret
//! that does not change (BENCHMARKS.md, session 12). An entry is found by
//! endpoint id and holds the sealed bytes it was opened from, and serves
//! only a claimed row that carries the same bytes: were an endpoint's
//! secret ever resealed or rotated (no call does so today), the new one is
//! opened, so nothing is signed with a secret the database no longer holds.
//! The keys stay in this process's memory, like the seal key itself, and
//! are never printed. An entry unused between two sweeps (the dispatcher's
//! housekeeping, every 5 s) is dropped, so a deleted or idle endpoint's key
//! leaves memory within about 10 s; but housekeeping waits while the
//! dispatcher works through a backlog (rounds of full batches), and until
//! then every endpoint it delivered to keeps its entry: at most one per
//! endpoint in the database.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use uuid::Uuid;

use super::{
    secret::{SealKey, SecretError},
    signature::SigningKey,
};

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

struct Entry {
    sealed: Vec<u8>,
    key: SigningKey,
    used: bool,
}

impl KeyCache {
    /// The key for `endpoint`'s sealed secret `sealed`, opened with
    /// `seal_key` unless held already.
    pub fn key(
        &self,
        seal_key: &SealKey,
        endpoint: Uuid,
        sealed: &[u8],
    ) -> Result<SigningKey, SecretError> {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&endpoint) {
            if entry.sealed == sealed {
                entry.used = true;
                return Ok(entry.key.clone());
            }
        }
        let key = SigningKey::new(&seal_key.open(endpoint, sealed)?);
        entries.insert(
            endpoint,
            Entry {
                sealed: sealed.to_vec(),
                key: key.clone(),
                used: true,
            },
        );
        Ok(key)
    }

    /// Drops the entries unused since the last sweep.
    pub fn sweep(&self) {
        let mut entries = self.entries();
        entries.retain(|_, entry| std::mem::take(&mut entry.used));
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().expect("webhook key cache poisoned")
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::SigningSecret;

    fn sealed_secret(seal_key: &SealKey, endpoint: Uuid) -> (SigningSecret, Vec<u8>) {
        let secret = SigningSecret::generate().unwrap();
        let sealed = seal_key.seal(endpoint, &secret).unwrap();
        (secret, sealed)
    }

    fn signs_as(key: SigningKey, secret: &SigningSecret) -> bool {
        key.sign("msg", "1", "{}") == SigningKey::new(secret).sign("msg", "1", "{}")
    }

    #[test]
    fn a_changed_sealed_secret_is_opened_again() {
        let seal_key = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        let cache = KeyCache::default();
        let endpoint = Uuid::now_v7();
        let signs = |sealed: &[u8], secret| {
            signs_as(cache.key(&seal_key, endpoint, sealed).unwrap(), secret)
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
        assert!(cache.key(&seal_key, endpoint, &foreign).is_err());
    }

    #[test]
    fn an_entry_unused_between_two_sweeps_is_dropped() {
        let seal_key = SealKey::new(&SealKey::fresh_material().unwrap()).unwrap();
        let cache = KeyCache::default();
        let (busy, idle) = (Uuid::now_v7(), Uuid::now_v7());
        let (_, busy_sealed) = sealed_secret(&seal_key, busy);
        let (_, idle_sealed) = sealed_secret(&seal_key, idle);
        cache.key(&seal_key, busy, &busy_sealed).unwrap();
        cache.key(&seal_key, idle, &idle_sealed).unwrap();
        cache.sweep();
        assert_eq!(cache.len(), 2, "both were used before the first sweep");
        cache.key(&seal_key, busy, &busy_sealed).unwrap();
        cache.sweep();
        assert_eq!(cache.len(), 1, "the idle endpoint's key is gone");
    }
}
