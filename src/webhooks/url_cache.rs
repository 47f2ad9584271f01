//! Each endpoint's checked URL, kept between deliveries.
//!
//! `TargetPolicy::check_shape` parses the URL on every delivery (about
//! 6,000 instructions for `http://127.0.0.1:…/hook`, BENCHMARKS.md, session
//! 12). Its answer depends only on the policy, fixed for the dispatcher's
//! life, and the URL's text, so an entry holds the text it was checked from
//! and serves only a claimed row that carries the same text: an updated URL
//! is checked afresh. A refused URL is not kept (its delivery fails and is
//! retried, checked again). The address rule at connect time
//! (`GuardedResolver`) is untouched. Entries unused between two sweeps are
//! dropped, as in `key_cache`.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use uuid::Uuid;

use super::target::{TargetError, TargetPolicy};

pub struct UrlCache {
    policy: TargetPolicy,
    entries: Mutex<HashMap<Uuid, Entry>>,
}

struct Entry {
    raw: String,
    url: reqwest::Url,
    used: bool,
}

impl UrlCache {
    pub fn new(policy: TargetPolicy) -> UrlCache {
        UrlCache {
            policy,
            entries: Mutex::default(),
        }
    }

    /// `raw`, `endpoint`'s URL, as `check_shape` answers it.
    pub fn checked(&self, endpoint: Uuid, raw: &str) -> Result<reqwest::Url, TargetError> {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&endpoint) {
            if entry.raw == raw {
                entry.used = true;
                return Ok(entry.url.clone());
            }
        }
        let url = self.policy.check_shape(raw)?;
        entries.insert(
            endpoint,
            Entry {
                raw: raw.to_owned(),
                url: url.clone(),
                used: true,
            },
        );
        Ok(url)
    }

    /// Drops the entries unused since the last sweep.
    pub fn sweep(&self) {
        self.entries()
            .retain(|_, entry| std::mem::take(&mut entry.used));
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().expect("webhook URL cache poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_updated_url_is_checked_again_and_a_refused_one_is_not_kept() {
        let cache = UrlCache::new(TargetPolicy::default());
        let endpoint = Uuid::now_v7();
        let first = cache
            .checked(endpoint, "https://hooks.example.com/a")
            .unwrap();
        assert_eq!(first.as_str(), "https://hooks.example.com/a");
        let again = cache
            .checked(endpoint, "https://hooks.example.com/a")
            .unwrap();
        assert_eq!(again, first);
        let updated = cache
            .checked(endpoint, "https://hooks.example.com/b")
            .unwrap();
        assert_eq!(updated.as_str(), "https://hooks.example.com/b");
        // Plain http is refused under the default policy, every time.
        for _ in 0..2 {
            assert_eq!(
                cache.checked(endpoint, "http://hooks.example.com/b"),
                Err(TargetError::NotHttps)
            );
        }
        assert_eq!(
            cache.checked(endpoint, "https://10.0.0.1/hook"),
            Err(TargetError::PrivateAddress("10.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn an_entry_unused_between_two_sweeps_is_dropped() {
        let cache = UrlCache::new(TargetPolicy::default());
        let endpoint = Uuid::now_v7();
        cache
            .checked(endpoint, "https://hooks.example.com/a")
            .unwrap();
        cache.sweep();
        assert_eq!(cache.entries().len(), 1);
        cache.sweep();
        assert!(cache.entries().is_empty());
    }
}
