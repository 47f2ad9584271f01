//! Every issued key hash, held in memory, so that Check answers a
//! well-formed but unknown key without the store: the key format's checksum
//! is public, so anyone can mint keys that parse, and each would otherwise
//! cost a database read.
//!
//! - The set holds the first 64 bits of each hash. It never forgets an
//!   issued key (no false negatives); a false positive, another hash sharing
//!   an issued one's 64 bits, only costs the store read every miss used to.
//! - Kept current by this process's own creates and rotations (added before
//!   the store commits them) and, across replicas, by the `key:<id>`
//!   notifications; filled from the store at start and after every listener
//!   reconnect. Nothing is ever removed, so a fill racing an insert loses
//!   nothing.
//! - It is consulted only while trusted: until the first fill, and while the
//!   listener is away (notifications of keys created elsewhere are being
//!   missed), every miss reads the store as before.
//! - A probe takes a read lock for one hash-set lookup, never across an
//!   await, and allocates nothing.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        PoisonError, RwLock,
    },
};

use crate::domain::KeyHash;

/// The 64-bit prefix of a key hash, as held in the set.
pub type HashPrefix = [u8; 8];

#[derive(Default)]
pub struct IssuedKeys {
    prefixes: RwLock<HashSet<u64, foldhash::fast::RandomState>>,
    trusted: AtomicBool,
}

impl IssuedKeys {
    /// An empty, untrusted set: every hash may exist until it is filled.
    pub fn new() -> Self {
        Self::default()
    }

    /// `false` only when no key with this hash was ever issued.
    pub fn may_exist(&self, hash: &KeyHash) -> bool {
        if !self.trusted.load(Ordering::Acquire) {
            return true;
        }
        self.prefixes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&prefix_of(hash))
    }

    /// Adds a key about to be issued (or heard of from another replica).
    pub fn insert(&self, prefix: HashPrefix) {
        self.prefixes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(u64::from_le_bytes(prefix));
    }

    /// Adds every key the store holds and trusts the set from now on.
    pub fn fill(&self, prefixes: impl IntoIterator<Item = HashPrefix>) {
        let mut set = self
            .prefixes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        set.extend(prefixes.into_iter().map(u64::from_le_bytes));
        drop(set);
        self.trusted.store(true, Ordering::Release);
    }

    /// Stops answering "unknown" until the next [`IssuedKeys::fill`], e.g.
    /// while notifications of keys created elsewhere may be missed.
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::Release);
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Prefixes held (for the metrics gauge).
    pub fn len(&self) -> usize {
        self.prefixes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The prefix the set holds for `hash`.
pub fn prefix(hash: &KeyHash) -> HashPrefix {
    let mut prefix = [0; 8];
    prefix.copy_from_slice(&hash.as_bytes()[..8]);
    prefix
}

fn prefix_of(hash: &KeyHash) -> u64 {
    u64::from_le_bytes(prefix(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> KeyHash {
        KeyHash::of_token(&format!("token-{n}"))
    }

    #[test]
    fn an_untrusted_set_lets_every_hash_through() {
        let issued = IssuedKeys::new();
        assert!(issued.may_exist(&hash(1)));
        issued.fill([prefix(&hash(1))]);
        assert!(!issued.may_exist(&hash(2)));
        issued.distrust();
        assert!(issued.may_exist(&hash(2)));
    }

    #[test]
    fn issued_hashes_are_found_and_others_are_not() {
        let issued = IssuedKeys::new();
        issued.fill((0..1000).map(|n| prefix(&hash(n))));
        issued.insert(prefix(&hash(5000)));
        assert!((0..1000).all(|n| issued.may_exist(&hash(n))));
        assert!(issued.may_exist(&hash(5000)));
        assert!((1000..5000).all(|n| !issued.may_exist(&hash(n))));
        // A refill keeps what was inserted meanwhile.
        issued.fill([prefix(&hash(1))]);
        assert!(issued.may_exist(&hash(5000)));
    }
}
