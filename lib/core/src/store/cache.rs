//! An in-process cache of the two records every webhook dispatch reads before it writes: the
//! API key that authenticates the request (by its hash) and the company's webhook endpoints.
//!
//! Only for a process that makes every change to these records itself: the local system's
//! `voyage serve` (the other `voyage` commands create keys, which a cache never answers for
//! before it has read them, and change no endpoint). There the cache is exact: every change
//! through the [`Store`](super::Store) forgets the entry after its write commits, and a read
//! that raced a change is not kept (a generation counter, bumped by every change, must be the
//! same before the read and when its answer is kept). Entries also expire after [`FRESH`], a
//! bound on any change made outside the process. Lambda functions never cache: many
//! processes change the records there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::{ApiKey, WebhookEndpoint};

/// The longest an entry is answered from memory.
pub const FRESH: Duration = Duration::from_secs(5);
/// Most entries of each kind; a full map is emptied (the next reads fill it again).
const MOST: usize = 10_000;

/// The read cache (see the module docs).
#[derive(Debug, Default)]
pub struct ReadCache {
    generation: AtomicU64,
    keys: Mutex<HashMap<String, (ApiKey, Instant)>>,
    endpoints: Mutex<HashMap<String, (Vec<WebhookEndpoint>, Instant)>>,
}

/// The generation a read began at; its answer is kept only if no change came since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a plain map behind: still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fresh<T: Clone>(map: &HashMap<String, (T, Instant)>, key: &str) -> Option<T> {
    map.get(key)
        .filter(|(_, at)| at.elapsed() < FRESH)
        .map(|(v, _)| v.clone())
}

impl ReadCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Taken before reading the store for an entry to keep.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    fn keep<T>(
        &self,
        map: &Mutex<HashMap<String, (T, Instant)>>,
        read_at: Generation,
        key: &str,
        value: T,
    ) {
        let mut map = locked(map);
        // Checked under the lock that `forget` takes after bumping the generation: a change
        // either bumped it before this check (not kept) or removes the entry after it.
        if self.generation() != read_at {
            return;
        }
        if map.len() >= MOST {
            map.clear();
        }
        map.insert(key.to_string(), (value, Instant::now()));
    }

    fn forget<T>(&self, map: &Mutex<HashMap<String, (T, Instant)>>, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        locked(map).remove(key);
    }

    pub fn key(&self, hash: &str) -> Option<ApiKey> {
        fresh(&locked(&self.keys), hash)
    }

    /// Keeps a key read at `read_at` (never an absent one: a key made later must be found).
    pub fn keep_key(&self, read_at: Generation, key: &ApiKey) {
        self.keep(&self.keys, read_at, &key.key_hash, key.clone());
    }

    /// After a change to the key whose hash is `hash` has committed.
    pub fn forget_key(&self, hash: &str) {
        self.forget(&self.keys, hash);
    }

    pub fn endpoints(&self, company: &str) -> Option<Vec<WebhookEndpoint>> {
        fresh(&locked(&self.endpoints), company)
    }

    pub fn keep_endpoints(&self, read_at: Generation, company: &str, list: &[WebhookEndpoint]) {
        self.keep(&self.endpoints, read_at, company, list.to_vec());
    }

    /// After a change to one of the company's endpoints has committed (or failed: forgetting
    /// is always safe).
    pub fn forget_endpoints(&self, company: &str) {
        self.forget(&self.endpoints, company);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: &str) -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            company_id: "acme".into(),
            key_hash: hash.into(),
            internal: false,
            description: None,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = ReadCache::new();
        let before = cache.generation();
        cache.forget_key("h");
        cache.keep_key(before, &key("h"));
        assert!(cache.key("h").is_none());
    }

    #[test]
    fn a_change_forgets_what_was_kept() {
        let cache = ReadCache::new();
        cache.keep_key(cache.generation(), &key("h"));
        assert!(cache.key("h").is_some());
        cache.forget_key("h");
        assert!(cache.key("h").is_none());
        cache.keep_endpoints(cache.generation(), "acme", &[]);
        assert_eq!(cache.endpoints("acme"), Some(vec![]));
        cache.forget_endpoints("acme");
        assert!(cache.endpoints("acme").is_none());
    }
}
